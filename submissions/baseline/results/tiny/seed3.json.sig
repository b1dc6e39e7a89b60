{
 "key": "0551c8948f5b38e6",
 "signature": "HRYt0YbmaAPGw8pKttEOYg3/DPm0a84V6mkz1zNETyyiDCqMUnFEuc5iXWw0ThSJuZ/sGJpk0YsFJFHAuUbyCw=="
}
