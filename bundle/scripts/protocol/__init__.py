"""The evaluation protocol of the few-shot medical segmentation field: folds, support/query
matching, metrics, reports, and the loop that runs any few-shot method through them."""
