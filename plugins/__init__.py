"""dabench's built-in plugins, installed as ``dabench_plugins`` and registered through entry points."""
