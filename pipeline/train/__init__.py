"""Training of both stages: cluster memory (Eq. 1-2), losses (Eq. 3, 6-9), P x K sampling,
augmentation, one epoch (``loop``), the resumable epoch loop (``runner``), and what is specific
to stage 1 (``intra``) and stage 2 (``inter``)."""
