{
 "key": "0551c8948f5b38e6",
 "signature": "Dmjre4ge0As8khgAdUrphABvlPJQAEHaZFmeaCBkC+anBHDZWV5g+dr7ELOgyGSjWPT6xdAYYsmjs5/jSQvpCg=="
}
