import unittest

from shapes.square import square_area


class SquareTest(unittest.TestCase):
    def test_area(self):
        self.assertEqual(square_area(3), 9)
