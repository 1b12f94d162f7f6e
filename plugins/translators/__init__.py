"""Built-in translators: source images made to look like target images (input-level adaptation)."""
