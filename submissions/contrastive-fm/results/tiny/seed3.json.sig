{
 "key": "0551c8948f5b38e6",
 "signature": "3iMdjiZJJ/nhixWwnBa3D6KARo+FCyyiY8V2HLQLhaZbZ7pAihWARNKOZuGyKcREuvORKsQzqsNnD822MOjzBw=="
}
