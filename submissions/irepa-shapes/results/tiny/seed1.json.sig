{
 "key": "8c406635d5fd3ff6",
 "signature": "N2mPCcNXKi/uQ1BpNt0BtpREp3CIH4oLy26WfRt2jYpAtBwe1WiP48TLWb/ez0Wuu2CbS92W4u+LY6qX5996BQ=="
}
