import unittest

import kv


class PackageTest(unittest.TestCase):
    def test_imports(self):
        self.assertTrue(kv.__doc__)
