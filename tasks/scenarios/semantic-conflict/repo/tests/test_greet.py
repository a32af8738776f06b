import unittest

from textkit.greet import greet


class GreetTest(unittest.TestCase):
    def test_greet(self):
        self.assertEqual(greet("ada"), "hello ada")
