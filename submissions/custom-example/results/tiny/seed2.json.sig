{
 "key": "0551c8948f5b38e6",
 "signature": "M+MT80hMyAyJq8z9E0v/UMTSEEhXmhZ66MtsHETtr044NrPqx82jf4EBZ/7MjY4GZ1mPH+0eSlwfA926rm5rBQ=="
}
