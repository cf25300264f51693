"""What every layer shares, with no TensorFlow and no MNIST: errors, atomic files and locks, boxes and resizing,
tables, run folders, the CPU's facts."""
