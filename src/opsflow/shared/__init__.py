"""Standard-library-only types shared by workflows, activities, API and CLI.

Nothing here may import anything outside the standard library: workflows import this package
inside Temporal's sandbox.
"""
