{
 "key": "0551c8948f5b38e6",
 "signature": "Ak+SpSpc7kISKh3WkBIvQVFvDgd2BRY9CTCXRXil23WFkW/QKxU0Mqak+sLFpEV6hq2g6JbyjEGC4kUmmcnnDw=="
}
