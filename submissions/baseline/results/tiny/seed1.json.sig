{
 "key": "8c406635d5fd3ff6",
 "signature": "u64wfRiygh9dY+RfcgwQvgm+HA6Z+DZjbCbtsLflGAa6AtUkTxMoegx4DOcsIBptNNCUD+WvhnyGYpbwn3bgDA=="
}
