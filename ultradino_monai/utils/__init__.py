"""Small helpers that every part of the project shares."""
