from .extra_levels import ExtraLevels

__all__ = ['ExtraLevels']
