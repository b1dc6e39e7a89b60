{
 "key": "228cf2f92d6bc34c",
 "signature": "DY9Csn9yIAUika0f9ooAOexmhKIAHQ/RNBW2qXp06ZE/q0jXzyTtdqewCBwdix70RsdznHP2uebMVP1vFf9LBw=="
}
