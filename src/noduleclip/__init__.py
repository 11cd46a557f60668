"""noduleclip: a semantic-guided vision-language model for lung-nodule malignancy on CT."""

__version__ = "0.1.0"
