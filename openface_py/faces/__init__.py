"""Finding and aligning faces: detectors (dlib HOG and CNN, MTCNN, the HOG-then-MTCNN cascade)
chosen by one ``DetectorSpec``, the alignments (OpenFace's affine, dlib's chip, Intel's 5-point
similarity), and the face stage that joins them for every job."""
