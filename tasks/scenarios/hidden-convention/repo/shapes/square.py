"""Squares."""

from shapes.registry import register


@register
def square_area(side):
    return side * side
