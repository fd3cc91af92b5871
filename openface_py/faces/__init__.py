"""Finding and aligning faces: detectors (dlib HOG, CNN) and OpenFace's affine alignment."""
