"""Object detection helpers of SCAI's own: label maps, box arithmetic and drawing.

No TensorFlow here, so the portal and the tests can use them without loading a model runtime.
"""
