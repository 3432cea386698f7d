"""Stream processors and their building blocks, all run by one worker runtime."""
