"""The fault injectors behind bench/faults.py: a shared harness and one function per fault."""
