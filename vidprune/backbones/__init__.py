"""Backbone families, one file each; each file registers its named configurations."""
