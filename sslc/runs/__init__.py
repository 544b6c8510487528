"""The record of a run: what a study stores (`trials`, `study`), where it lives (`storage`), a run read back
(`record`), the student file (`student_file`), and export (`export`). (The drivers are in `sslc.search`: the
inputs every trial shares, `sslc.search.inputs`, and the retrain driver, `sslc.search.retrain`.)

Nothing is imported here: `sslc.load_student` reads a student file without Optuna, Ray or the search.
"""
