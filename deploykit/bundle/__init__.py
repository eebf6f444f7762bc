"""Device-app bundles: package, web bundle, app templates."""
