"""Checkers for the notebooks' exercises: each takes the learner's function, compares it with the
package on small cases, and prints pass or fail with a hint. One module per notebook topic."""
