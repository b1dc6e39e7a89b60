{
 "key": "0551c8948f5b38e6",
 "signature": "GhBEQ/q1/rM78OsMysqoN01SJ8fNxizfmuST+DWP/o70MrbiId+5hKRz3rSa5Os9CaiLqG2yKQ0lf6u0Laf3AA=="
}
