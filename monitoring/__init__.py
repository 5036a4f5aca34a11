"""Monitoring: a report on the logged predictions of a window against the model's training data.

One module per section (drift, quality, fairness, performance), each a pure function from
frames to a result; `render` turns the results into HTML, `report` runs them on the log.
Nothing here imports the serving code.
"""
