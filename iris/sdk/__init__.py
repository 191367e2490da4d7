"""The Python client SDK: requests (`client.Client`) and Aperture-style admission tickets (`admission`)."""
