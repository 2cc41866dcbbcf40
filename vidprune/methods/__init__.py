"""Methods, one file each. A file defines a `TokenMethod` subclass decorated with `@register_method`."""
