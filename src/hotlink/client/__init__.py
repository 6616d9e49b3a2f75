"""The hotlink client."""
