"""`iris bench ...`: one module per benchmark, each printing a table and saving JSON; `harness` holds what
several of them share."""
