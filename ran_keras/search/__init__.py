"""Searches over architectures: ``prelu`` (the RAN-e PReLU search and its decision rule),
``scaling`` (RAN-i's training-free width/depth sweep by NN-Mass); ``defaults`` holds their
defaults in a module light enough for the command line's start-up."""
