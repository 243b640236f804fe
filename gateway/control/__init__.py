"""The running gateway as one object (``Gateway``): built from the settings and manifests, reloaded in place.
What the HTTP routes and the CLI act on; it composes the layers below."""
