"""pytest plugin for the osqueue conformance suite (filled in below as it lands)."""
