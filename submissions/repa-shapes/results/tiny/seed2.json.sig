{
 "key": "8c406635d5fd3ff6",
 "signature": "HDLoqwUTEdQFB0IDxU1FGwxeWhUJnnQdH/fqSMdraM4x+FWPlobolIz5E4obGlwwS+12ehrzViCdD0PzdIPhBA=="
}
