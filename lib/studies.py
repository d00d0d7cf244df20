"""Every study of the project, in order: `python -m lib` (its commands, `all`, `summary`, `figures`),
lib.report and the notebook loop over STUDIES. Adding a study is one module that defines a
lib.study.Study and one line here."""
from lib import best, experiments, failures, seed_study, when_study

STUDIES = (
    experiments.STUDY,  # the grid search and the evaluation of the four 002 models
    failures.STUDY,  # the failed rounds of the evaluation, explained
    seed_study.STUDY,  # every architecture of the seed reports
    best.STUDY,  # the best model: forward selection, frozen recipe, confirmation
    when_study.SIZE,  # when do the ideas help: training-set size
    when_study.AUX,  # auxiliary weight
    when_study.ERRORS,  # what the networks get wrong
)


def results_files():
    """(results file stem, the command that writes it) of every study, in order."""
    return [(stem, command) for study in STUDIES for stem, command in study.files]
