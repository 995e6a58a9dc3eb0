"""The PinRec model as a pure library: embedders, causal transformer, conditioned head, losses,
generation and retrieval. No I/O, logging or clock inside `forward`.

Public modules (what jobs, serving and benches may import; everything prefixed `_` is private
to its module):
    config      PinRecConfig, preset
    item_tower  hash_ids, ItemTower (paper 4.1)
    model       PinRec (PinRec.prefill / PinRec.generate: the one generation)
    api         load_model, save_model, embed_items, generate_candidates (per-request / Faiss)
    batch_generation  arrow_history_arrays, generate_arrays, select_candidates (the one selection)
    retrieval   Retriever (Faiss), ExactIndex
    training    TrainConfig, fit, train_step;  negatives: the sampled softmax's swappable parts
    training_loss  CatalogTensors, training_loss (one batch);  targets: sample_targets (Eq. 5)
    data, offline, metrics, plots   training data, offline protocols, metrics, figures
    distributed data-parallel helpers
"""
