"""Every picture and page: plots, the panel of maps, the viewer, the failures' gallery."""
