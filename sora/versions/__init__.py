"""Published versions of functions and their aliases (issue 17, points 4 and 5)."""
