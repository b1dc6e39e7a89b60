{
 "key": "8c406635d5fd3ff6",
 "signature": "Io7WFjzSxFIRZ0Cb2oGeeKKuWT9L4B7MEn+OFe0O0P7zkbO31nj31gJ5YHLCBsdPvQwqoxr0mY3SQc7N22KYCA=="
}
