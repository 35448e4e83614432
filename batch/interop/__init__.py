"""Interoperation with other tools: import a committee's outputs written elsewhere (``mapd import``)
and export a run's instruction records and committee outputs (``mapd export``)."""
