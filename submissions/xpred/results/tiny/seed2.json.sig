{
 "key": "0551c8948f5b38e6",
 "signature": "8GfDqnp3In3sQuJGpwGhYMB5/rHvaXYJGSenzjHKVAEhaY0AsIZ+0CGNw4mIPZdWvfd3juwKFroFSRQWKl4hBg=="
}
