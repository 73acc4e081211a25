from .runner import entry

entry()
