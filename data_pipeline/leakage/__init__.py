"""Leakage audit of a built dataset: what a model evaluated on validation or test may have seen
in training (molecules, scaffolds, near neighbours, texts, proteins). Written under `leakage`
in each pair type's build_report.json by `python -m molbind_data.build` (skip it with
--noleakage) and by `python -m molbind_data.leakage` for an existing build; see docs/data.md.

audit.py works on plain records (no TensorFlow): `audit.audit(records)`; built.py reads a
built dataset back and writes the sections: `built.audit_dataset(dataset, data_dir)`.
"""
