"""Data: tables read from files (``tables``), label spaces (``labels``), stratified splits (``splits``), rows
rendered through a template into token ids and batches (``render``)."""
