"""The class hierarchies that ship with iwan (see README.md here); read with importlib.resources."""
