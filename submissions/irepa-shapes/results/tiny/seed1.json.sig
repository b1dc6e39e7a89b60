{
 "key": "0551c8948f5b38e6",
 "signature": "wKRtR8QK6PZY7DqVb8XtEJ3NdjJ/c7oxn78xym7pyhZX/rd6SEBfLOAyUANYJXwINcp9WDV4i8RR8hmKHDXzDA=="
}
