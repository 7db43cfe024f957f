"""Training a classification head on your own photos: dataset, bottleneck features, head, export."""
