{
 "key": "8c406635d5fd3ff6",
 "signature": "DTHG4eBXak0jLDGUyLNaagaI4rc+2MbzGT0cW/1GVi2tq+SruOay0H+P9Yfm1qCFqgbkmiNSBPVBoBA5FsqtAQ=="
}
