"""Measurements of model quality: NIGHTS 2AFC, retrieval on labelled folders, copy detection."""
