"""`sora`: the command line for a Sora host (`main.py`), and for functions without one."""
